import sys

from nsf_agent.dms.cli import main

sys.exit(main())
