import sys

from nsf_agent.functions.process import main

sys.exit(main())
