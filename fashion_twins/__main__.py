"""`python -m fashion_twins ...`: the `fashion-twins` command where the console script is not on PATH yet."""

from fashion_twins.cli import entry

if __name__ == "__main__":
    entry()
