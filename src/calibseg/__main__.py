"""``python -m calibseg`` (used by ``torchrun``) runs the command line."""

from calibseg.cli.app import main

if __name__ == "__main__":
    main()
