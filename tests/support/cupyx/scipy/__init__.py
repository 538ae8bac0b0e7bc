import cupyx.scipy.special as special  # noqa: F401
