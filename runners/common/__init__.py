"""Pure-Python helpers shared by every runner (stop sequences, ...). No engine imports."""
