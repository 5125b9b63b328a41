"""Per-dtype tolerances (atol, rtol) for comparing against float64 oracles."""
TOL = {
    "float16": (3e-2, 3e-2),
    "bfloat16": (1e-1, 5e-2),
    "float32": (2e-4, 2e-4),
    "float64": (1e-9, 1e-9),
}
