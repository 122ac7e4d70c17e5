"""mlx-lm as the embeddings peer: each text's final hidden states (model.model, after the final
norm), last token, L2-normalised, one sequence at a time as ours does. Prints JSON
{"seconds": [...per timed run], "vectors": [...]} (the last run's, to compare with ours),
after a warm-up on the first two texts.
  .cache/peers/venv/bin/python bench/embeddings_peer.py <model dir> <texts.json> <runs>"""
import json, sys, time
import mlx.core as mx
from mlx_lm import load

model, tokenizer = load(sys.argv[1])
texts = json.load(open(sys.argv[2]))
runs = int(sys.argv[3])


def embed(text):
    h = model.model(mx.array([tokenizer.encode(text)]))[0, -1].astype(mx.float32)
    return (h / mx.linalg.norm(h)).tolist()  # to the host, as ours returns them


for text in texts[:2]:  # warm up, as ours does
    embed(text)
seconds, vectors = [], []
for _ in range(runs):
    started = time.perf_counter()
    vectors = [embed(text) for text in texts]
    seconds.append(time.perf_counter() - started)
print(json.dumps({"seconds": seconds, "vectors": vectors}))
