"""SFC data plane of an NSF agent: NSH codec, classifier, SFF and SFC proxy (issue 16)."""
