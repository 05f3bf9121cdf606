"""Start the vision-rs Gradio app: the same as `vision-rs app` (all its options work here too).

    python demos/app.py [--host 127.0.0.1] [--port 7860] [--models DIR] [--share]
"""

from __future__ import annotations

import sys

from vision_rs.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
