"""`python -m runtime.serve FOLDER [options]`: the torch-free way to run the service."""

from runtime.serve.cli import main

if __name__ == "__main__":
    main(prog_name="python -m runtime.serve")
