"""hf_mamba_refine tour: diagnose a tiny Mamba, simulate token dynamics, patch it and train a few steps."""

import tempfile
from pathlib import Path

import torch
from transformers import MambaConfig, MambaForCausalLM

import hf_mamba_refine as refine
from hf_mamba_refine.data import DEFAULT_PACKAGES, VOCAB_SIZE, char_corpus, package_snippets

from .checks import expect


def _train(model: torch.nn.Module, batches, steps: int, lr: float = 3e-3) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = batches(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="hf_mamba_refine_demo_"))
    config = MambaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, state_size=4, num_hidden_layers=2)
    model = MambaForCausalLM(config)
    print("1. analyze() of a freshly initialised Mamba (regime of sym(S_C^T S_B) per layer):")
    print(refine.analyze(model))

    print("\n2. simulated token dynamics of a 1-D layer (sign of mu = S_C S_B decides):")
    for mu in (1.0, -1.0):
        dynamics = refine.TokenDynamics(torch.tensor([[mu]]), torch.ones(1, 1), torch.tensor([0.3]), 0.5)
        trajectory = dynamics.simulate(torch.randn(6, 1), t_max=30.0)
        path = refine.plot_token_norms(trajectory, out / f"token_norms_mu{mu:+.0f}.png", f"mu = {mu:+.0f}")
        print(f"   mu = {mu:+.0f}: {trajectory.verdict()} (figure: {path})")

    print("\n3. patch(stable=True): every layer becomes PSD (divergent), no new parameters:")
    refine.patch(model, stable=True)
    train = char_corpus("train", 200_000, out / "data")

    def lm_batch(net: torch.nn.Module) -> torch.Tensor:
        starts = torch.randint(0, len(train) - 65, (8,))
        batch = train[starts[:, None] + torch.arange(64)].long()
        return net(batch, labels=batch).loss

    losses = _train(model, lm_batch, steps=30)
    print(f"   30 training steps on stdlib bytes: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    report = refine.analyze(model)
    print(report)
    divergent = all(layer.regime == "divergent" for layer in report.layers)
    expect(divergent, "a stable patch keeps every layer divergent")
    prompt = torch.tensor([list(b"def ")])
    generated = model.eval().generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24,
                                      do_sample=False)
    print(f"   generate() still works: {bytes(generated[0].tolist())!r}")
    model.save_pretrained(out / "lm")
    loaded = refine.from_pretrained(out / "lm")
    gap = float((loaded(prompt).logits - model(prompt).logits).detach().abs().max())
    print(f"   save_pretrained -> hf_mamba_refine.from_pretrained: patched again, max logit change {gap:.1e}")
    expect(gap < 1e-5, "a patched model reloads with the same outputs")
    plain = MambaForCausalLM.from_pretrained(out / "lm").eval()
    same = torch.equal(plain(prompt).logits, model(prompt).logits)
    print(f"   a standard Mamba checkpoint: plain transformers loads the same function: {same}")
    expect(same, "plain transformers loads the patched checkpoint with the same outputs")

    print("\n4. MambaForSequenceClassification with token reordering (which stdlib package?):")
    snippets, labels = package_snippets(DEFAULT_PACKAGES, 64, "train")
    classifier = refine.MambaForSequenceClassification(
        MambaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, state_size=4, num_hidden_layers=2,
                    num_labels=len(DEFAULT_PACKAGES))
    )
    refine.patch(classifier, stable=False, reorder=True, tau=1.0)

    def classify_batch(net: torch.nn.Module) -> torch.Tensor:
        index = torch.randint(0, len(labels), (8,))
        return net(snippets[index].long(), labels=labels[index]).loss

    losses = _train(classifier, classify_batch, steps=20)
    print(f"   {DEFAULT_PACKAGES}: 20 steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    try:
        refine.patch(MambaForCausalLM(config), reorder=True)
    except ValueError as error:
        print(f"   reorder on a generative model is refused: {error}")
    else:
        expect(False, "reorder on a generative model is refused")


if __name__ == "__main__":
    main()
