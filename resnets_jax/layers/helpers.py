"""Small helpers shared by layers and models."""


def make_divisible(v: float, divisor: int = 8, min_value=None, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: round to the nearest multiple of ``divisor``, never dropping
    more than 10%."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v
