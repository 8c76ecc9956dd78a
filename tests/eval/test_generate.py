"""Generation: greedy ids equal with and without the KV cache and equal to `transformers`' generate;
top-p filtering and sampling."""
import pytest
import torch

from minilvlm.eval.generate import generate, left_pad, next_token, top_p_filter
from minilvlm.weights import from_pretrained
from tests.models import hf_fixtures

PROMPTS = [[5, 17, 42, 8, 99, 3, 61], [12, 7, 30]]


def _hf_new_tokens(ref, ids, mask, n, stop):
    out = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0,
                       eos_token_id=stop, min_new_tokens=0)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("make", [hf_fixtures.llama, hf_fixtures.qwen2, hf_fixtures.phi],
                         ids=["llama-gqa", "qwen2", "phi"])
def test_greedy_matches_transformers_with_and_without_cache(tmp_path, make):
    ref = make(tmp_path)
    ours = from_pretrained(tmp_path)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    cached = generate(ours, ids, mask, max_new_tokens=20)
    uncached = generate(ours, ids, mask, max_new_tokens=20, use_cache=False)
    assert cached.shape == (2, 20)
    assert torch.equal(cached, uncached)
    # transformers needs some eos id; use one no row produces, so all 20 tokens are compared.
    unused = next(t for t in range(ref.config.vocab_size) if t not in cached)
    assert torch.equal(cached, _hf_new_tokens(ref, ids, mask, 20, unused))
    # Stop on a token row 0 emits mid-way: it stops there (the stop kept, pad after), row 1 goes on.
    stop = int(cached[0, 6])
    first = int((cached[0] == stop).nonzero()[0])
    stopped = generate(ours, ids, mask, max_new_tokens=20, stop_ids=[stop])
    assert stopped[0, first] == stop and (stopped[0, first + 1:] == 0).all()
    assert torch.equal(stopped, _hf_new_tokens(ref, ids, mask, 20, stop)[:, : stopped.shape[1]])


def test_left_padding_does_not_change_a_row(tmp_path):
    hf_fixtures.llama(tmp_path)
    ours = from_pretrained(tmp_path)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    batched = generate(ours, ids, mask, max_new_tokens=8)
    alone = generate(ours, torch.tensor([PROMPTS[1]]), max_new_tokens=8)
    assert torch.equal(batched[1], alone[0])


def test_generate_from_embeddings(tmp_path):
    hf_fixtures.phi(tmp_path)
    ours = from_pretrained(tmp_path)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    with torch.no_grad():
        embeds = ours.embed(ids)
    assert torch.equal(generate(ours, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=6),
                       generate(ours, ids, mask, max_new_tokens=6))


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    assert torch.allclose(top_p_filter(probs, 0.75), torch.tensor([[0.0, 0.5, 0.3, 0.0]]) / 0.8)
    assert torch.allclose(top_p_filter(probs, 0.8), torch.tensor([[0.0, 0.5, 0.3, 0.0]]) / 0.8)
    assert torch.allclose(top_p_filter(probs, 0.81), torch.tensor([[0.0, 0.5, 0.3, 0.15]]) / 0.95)
    assert torch.allclose(top_p_filter(probs, 0.1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_sampling_stays_in_the_nucleus_and_follows_its_distribution():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens = next_token(logits, temperature=1.0, top_p=0.75, generator=gen)
    assert set(tokens.tolist()) == {1, 2}
    share = (tokens == 1).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.03
    # A low temperature (LaVIN uses 0.1) sharpens towards the argmax.
    cold = next_token(logits, temperature=0.1, top_p=0.75, generator=gen)
    assert (cold == 1).float().mean() > 0.99
    assert torch.equal(next_token(logits[:3], temperature=0.0), torch.tensor([1, 1, 1]))


def test_sampled_generation_is_reproducible(tmp_path):
    hf_fixtures.qwen2(tmp_path)
    ours = from_pretrained(tmp_path)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    runs = [generate(ours, ids, mask, max_new_tokens=10, temperature=0.7, top_p=0.9,
                     generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_left_pad_rejects_empty_prompts():
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1, 2], []], pad_id=0)
