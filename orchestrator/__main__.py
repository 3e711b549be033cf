"""`python -m orchestrator`: the same command line as the `orchestrator` console script."""
from orchestrator.entry import main

if __name__ == "__main__":
    main()
