from mmdata.cli import main

if __name__ == "__main__":  # LocalCluster's worker processes re-import this module
    main()
