"""Speed and memory measurements, reported as ratios against a baseline run side by side."""
