"""Looking at a running cluster from the outside: `podnet connectivity test`."""
