"""A minimal nanoGPT-style GPT in PyTorch (not nanoGPT's own code), the PyTorch baseline of the
benchmarks: fused q/k/v, F.scaled_dot_product_attention(is_causal=True), learned
positions, pre-norm blocks, tied head, GPT-2's initialisation (0.02, residual writes
0.02 / sqrt(2 n_layer)). `bias` and `gelu` ("tanh" or "none") select GPT-2's shape (biases,
tanh GELU) or nanoGPT's shakespeare_char settings (no biases, exact GELU)."""
import math


def torch_gpt(torch, bias: bool = True, gelu: str = "tanh"):
    """-> the GPT class, built on the given torch module (imported by the caller)."""
    nn = torch.nn
    F = torch.nn.functional

    class SelfAttention(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h = h
            self.qkv = nn.Linear(d, 3 * d, bias=bias)  # fused q, k, v
            self.proj = nn.Linear(d, d, bias=bias)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).split(d, dim=2)
            q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.ln1 = nn.LayerNorm(d, bias=bias)
            self.attn = SelfAttention(d, h)
            self.ln2 = nn.LayerNorm(d, bias=bias)
            self.fc = nn.Linear(d, 4 * d, bias=bias)
            self.fc_out = nn.Linear(4 * d, d, bias=bias)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate=gelu))

    class GPT(nn.Module):
        def __init__(self, vocab, seq, n_layer, d, h):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.wpe = nn.Embedding(seq, d)
            self.blocks = nn.ModuleList([Block(d, h) for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(d, bias=bias)
            self.head = nn.Linear(d, vocab, bias=False)
            self.head.weight = self.wte.weight  # tied
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    residual = name.endswith(("proj.weight", "fc_out.weight"))
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer) if residual else 0.02)
                elif name.endswith("bias") and ".ln" not in name and not name.startswith("ln"):
                    nn.init.zeros_(p)

        def logits(self, idx):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

        def forward(self, idx, targets):
            logits = self.logits(idx)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    return GPT
