"""The what-if tools: a world read from manifests or a cluster (world), the engine's
answer for every pair (matrix), and how it is shown (report: tables, explanations;
html: `matrix -o html`). They load neither the lab nor the cluster agent; the per-pair
verdict they build on is the engine's own (compile/evaluate.py)."""
