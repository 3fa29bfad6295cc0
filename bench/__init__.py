"""olbproxy's benchmark (issue 7): ``.venv/bin/python bench/run.py``; see run.py."""
