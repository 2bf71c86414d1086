"""How long to wait after failures: one exponential backoff for every retry loop in Beacon."""


def exponential(failures: int, first_s: float, cap_s: float) -> float:
    """The wait after `failures` failures in a row (1, 2, ...): `first_s`, doubling, at most
    `cap_s`. Zero failures wait nothing extra."""
    if failures < 1:
        return 0.0
    return min(cap_s, first_s * 2 ** min(failures - 1, 62))  # the exponent is capped: no overflow
