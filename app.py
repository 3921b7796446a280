"""`python app.py`: the VA-π Workbench on 127.0.0.1 (see `python app.py --help`).

The code lives in the `app/` package (create_app, launch); this file is the entry point.
"""
from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
