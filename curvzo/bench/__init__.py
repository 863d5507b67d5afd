"""Speed and memory benchmark (``make bench``): our ZO steps against forward passes, inference
memory and a reference step written the way the original MeZO code does it."""
