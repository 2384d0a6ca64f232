"""Can β-CAL make β-CLIP's pooler query-specific on a given model's features, and how fast?

    python benchmarks/pooler_probe.py runs/demo/runs/clip runs/demo/shards/train runs/demo/shards/heldout \
        [--steps 2000] [--lr 1e-3] [--beta 0.5] [--heads 8] [--query-scale 1]

The backbone is frozen: its patch keys and text embeddings are computed once, then a fresh pooler
(``pipeline.models.pooler``, as the model builds it) trains alone on β-CAL (CE, the demo's options)
with AdamW over batches of 16 images, the demo's rank batch. Every ``--every`` steps it prints the
held-out pooler diagnostic (``pipeline.eval.pooler``'s pooled cosine and attention entropy) and
β-CAL's value beside its chance and floor. It separates what the features allow from what a
200-step fine-tune reaches (docs/evaluation.md, "What β-CLIP's pooler learns"). Not a timed test.
"""

from __future__ import annotations

import argparse
import math
import random

import torch
import torch.nn.functional as F

from pipeline.batch import text_id
from pipeline.eval.data import load_eval_set
from pipeline.eval.model import embed_texts, load_model, model_pixels
from pipeline.models.dense import encode_image_dense
from pipeline.models.pooler import TextConditionedPooler, capped_scale
from pipeline.objectives.beta_cal import beta_cal_loss, ce_chance_and_floor

K = 36  # text slots per image, as β-CLIP


@torch.no_grad()
def features(
    model, data: str, max_images: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patch keys [N, P, D], text slots [N, K, D], slot mask [N, K], text ids [N, K]) of a dataset."""
    images = load_eval_set(data, max_images=max_images)
    keys, slots, masks, ids = [], [], [], []
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        grid = encode_image_dense(model.clip.visual, model_pixels(model, chunk), model.cfg.dense)[1]
        keys.append(model.pooler_keys(grid))
        texts = [list(dict.fromkeys(im.queries))[:K] for im in chunk]
        embedded = embed_texts(model, [t for image_texts in texts for t in image_texts]).split(
            [len(t) for t in texts]
        )
        for image_texts, emb in zip(texts, embedded):
            slots.append(F.pad(emb, (0, 0, 0, K - len(image_texts))))
            masks.append(torch.arange(K) < len(image_texts))
            ids.append(torch.tensor([text_id(t) for t in image_texts] + [0] * (K - len(image_texts))))
    return torch.cat(keys), torch.stack(slots), torch.stack(masks), torch.stack(ids)


@torch.no_grad()
def diagnostic(pooler: TextConditionedPooler, keys, slots, masks) -> tuple[float, float]:
    """(pooled cosine between different texts of one image, attention entropy / ln P), held out."""
    cosines, entropies = [], []
    for k, t, m in zip(keys, slots, masks):
        t = t[m]
        pooled, w = pooler.pool(t[None], k[None], need_weights=True)
        p = F.normalize(pooled[0], dim=-1)
        n = len(t)
        cosines.append(((p @ p.T).sum() - n).item() / (n * (n - 1)))
        entropies.append((-torch.special.xlogy(w, w).sum(-1) / math.log(w.shape[-1])).mean().item())
    return sum(cosines) / len(cosines), sum(entropies) / len(entropies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("train")
    parser.add_argument("heldout")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--query-scale", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, torch.device("cpu")).eval()
    train, held = features(model, args.train, 0), features(model, args.heldout, 100)
    pooler = TextConditionedPooler(train[0].shape[-1], args.heads, args.query_scale)
    optimizer = torch.optim.AdamW(pooler.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    order, rng = list(range(len(train[0]))), random.Random(0)
    print(f"{args}\nstep  beta_cal  chance  floor  pooled_cosine  attention_entropy")
    print(f"{0:5d}  {'-':>8}  {'':6}  {'':5}  {diagnostic(pooler, *held[:3])[0]:13.4f}", flush=True)
    per_epoch = len(order) // args.batch
    for step in range(1, args.steps + 1):
        if step % per_epoch == 1:
            rng.shuffle(order)
        i = torch.tensor(order[((step - 1) % per_epoch) * args.batch :][: args.batch])
        keys, slots, mask, ids = (x[i] for x in train)
        pooled = F.normalize(pooler(slots, keys), dim=-1)
        loss = beta_cal_loss(
            pooled, slots, mask, capped_scale(pooler.logit_scale), 1.0, args.beta, "ce", False
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            chance, floor = ce_chance_and_floor(ids, mask, 1.0, args.beta)
            cosine, entropy = diagnostic(pooler, *held[:3])
            print(
                f"{step:5d}  {loss.item():8.3f}  {chance:6.2f}  {floor:5.2f}  {cosine:13.4f}  {entropy:17.4f}"
            )


if __name__ == "__main__":
    main()
