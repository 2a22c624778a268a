"""slimeseg: segment images like a given example (SLiMe, ICLR 2024) on frozen Stable Diffusion.

    seg = Segmenter.from_pretrained("sd2.1-base")
    learned = seg.fit([image], [mask], ["background", "body", "wheel"])
    labels = seg.predict(new_image)          # (H, W) uint8 class indices
    learned.save("car.safetensors"); Learned.load("car.safetensors")
"""

__version__ = "0.1.0"

from .artifact import Learned  # noqa: E402
from .config import DEFAULT_MODEL, MODELS, SlimeConfig, fast_fit  # noqa: E402
from .errors import SlimeError  # noqa: E402
from .segmenter import Segmenter  # noqa: E402

__all__ = ["DEFAULT_MODEL", "MODELS", "Learned", "Segmenter", "SlimeConfig", "SlimeError", "__version__", "fast_fit"]
