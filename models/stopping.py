"""When decoding ends early: an EOS token, or a stop string showing up in the emitted text.

Both decoders (models/generate.py, models/engine.py) pass every iteration's accepted tokens
through one `Stopper` on the host, after the iteration's read-back, so the rule is written once
and neither the draft nor the verify pass changes. The kept tokens are those up to and including
the first EOS or the token that completes a stop string (what `transformers`' generate keeps),
so the output is always a prefix of the base model's: stopping early cannot break losslessness.
"""


class Stopper:
    """clip(tokens) -> the kept prefix of one iteration's tokens; `reason` is then "eos" or "stop"
    once decoding must end (None while it goes on)."""

    def __init__(self, eos: set[int], stop_strings: list[str] | None = None, tokenizer=None):
        self.eos = eos
        self.strings = [s for s in (stop_strings or []) if s]
        if self.strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer to read the text: pass tokenizer=... as well")
        self.tokenizer = tokenizer
        # A stop string that completes at the newest token lies inside the last `lookback` tokens
        # (a character is at most 4 bytes, a token at least one), so only that window is decoded
        # per token: no quadratic detokenisation over long outputs.
        self.lookback = 4 * max((len(s) for s in self.strings), default=0) + 1
        self.emitted: list[int] = []  # the tokens so far (kept only with stop strings, which read them)
        self.reason: str | None = None

    def clip(self, tokens: list[int]) -> list[int]:
        if not self.strings:  # EOS only: one set test per iteration (the serving loop runs this per request)
            if self.eos.isdisjoint(tokens):
                return tokens
            self.reason = "eos"
            return tokens[: next(i for i, t in enumerate(tokens) if t in self.eos) + 1]
        for i, t in enumerate(tokens):
            self.emitted.append(t)
            if t in self.eos:
                self.reason = "eos"
            elif self._stop_string_ends_here():
                self.reason = "stop"
            if self.reason is not None:
                return tokens[: i + 1]
        return tokens

    def _stop_string_ends_here(self) -> bool:
        text = self.tokenizer.decode(self.emitted[-self.lookback :])
        return any(s in text for s in self.strings)
