"""The benchmark behind the README's numbers: `python -m bench.run` (`make bench`), and its smaller measurements."""
