"""`python -m diffiml_cli ...`, which is also how `torchrun` starts distributed training."""

from diffiml_cli.cli.app import main

if __name__ == "__main__":
    main()
