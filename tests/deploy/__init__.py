"""Deploy tests: pyinfra against this machine or lab hosts."""
