"""The command-line front ends: minilvlm-train, minilvlm-eval, minilvlm-generate, minilvlm-soup,
minilvlm-ppl-filter and minilvlm-export (pyproject.toml's console scripts; tools/*.py run the same
`main`). Each parses its arguments, calls one function of the package and prints the result; every
one ends a user's mistake the same way (common.py): `error: ...` on stderr, exit code 2, and the
traceback only with --debug."""
