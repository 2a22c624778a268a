"""Segmentation quality on the synthetic lab world (a thin shell over `lab.quality`).

    python benchmarks/quality.py --json benchmarks/results-quality.json
    python benchmarks/quality.py --fast
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.quality import main  # noqa: E402

if __name__ == "__main__":
    main()
