"""`python -m jobs ...`: see `jobs.cli`."""

# Guarded: job discovery imports every module of this package, this one included.
if __name__ == "__main__":
    from jobs.cli import cli

    cli(prog_name="python -m jobs")
