"""Video on the synthetic lab: per-frame mIoU, flicker and speed per temporal mode (a thin shell
over `lab.video`).

    python benchmarks/video.py --json benchmarks/results-video-lab.json --speed
    python benchmarks/video.py --fast
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: lab/, slimeseg/

from lab.video import main  # noqa: E402

if __name__ == "__main__":
    main()
