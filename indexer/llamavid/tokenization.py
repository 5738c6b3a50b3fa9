"""Tokenizers of LLaMA-VID: the LLM's sentencepiece tokenizer with `<image>` placeholders, and
the Q-Former's BERT tokenizer.

The released checkpoints were made with transformers 4.31's *slow* `LlamaTokenizer`
(`legacy: false`). Its rules differ from the tokenizers-backed LLaMA tokenizer of transformers 5
for text that starts with a space (subtitles from speech recognition usually do), so the LLM side
drives the `sentencepiece` model directly and reproduces those rules; see `LlamaPromptTokenizer`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import BertTokenizer

IMAGE_TOKEN_INDEX = -200
IMAGE_PLACEHOLDER = "<image>"
QFORMER_MAX_LENGTH = 256
QFORMER_BOS = "[DEC]"
_SPIECE_UNDERLINE = "\u2581"


class LlamaPromptTokenizer:
    """The checkpoint's sentencepiece tokenizer, with the rules of transformers 4.31's slow
    `LlamaTokenizer` and LLaVA's `tokenizer_image_token` on top."""

    def __init__(self, model_file: str | Path, legacy: bool = False, add_bos: bool = True,
                 special_tokens: tuple[str, ...] = ("<unk>", "<s>", "</s>")):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.legacy = legacy
        self.add_bos = add_bos
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.special_tokens = tuple(t for t in special_tokens if self.sp.piece_to_id(t) != self.sp.unk_id()
                                    or t == "<unk>")
        # The slow tokenizer never splits its special tokens: they map to their ids wherever they appear.
        self._special_split = re.compile("(" + "|".join(re.escape(t) for t in self.special_tokens) + ")")

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> LlamaPromptTokenizer:
        model_dir = Path(model_dir)
        model_file = model_dir / "tokenizer.model"
        if not model_file.is_file():
            raise FileNotFoundError(
                f"{model_dir} has no tokenizer.model: LLaMA-VID checkpoints ship the LLaMA sentencepiece "
                "model beside config.json; copy it there from the base Vicuna checkpoint")
        config_file = model_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        # transformers 4.31 treated a missing `legacy` key as legacy=True
        return cls(model_file, legacy=config.get("legacy", True), add_bos=config.get("add_bos_token", True))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    # -- text -> pieces, as LlamaTokenizer.tokenize / _tokenize of transformers 4.31 ------------------
    def _encode_chunk(self, text: str) -> list[str]:
        if self.legacy:
            return self.sp.encode(text, out_type=str)
        is_first = text.startswith(_SPIECE_UNDERLINE)
        if is_first:
            text = text[1:]
        pieces = self.sp.encode(text, out_type=str)
        # A chunk that follows a special token gets no dummy-prefix space.
        if not is_first and not text.startswith(" ") and pieces and pieces[0].startswith(_SPIECE_UNDERLINE):
            pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
        return pieces

    def tokenize(self, text: str) -> list[str]:
        if not self.legacy:
            text = _SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " ")
        pieces: list[str] = []
        for chunk in self._special_split.split(text):
            if not chunk:
                continue
            if chunk in self.special_tokens:
                pieces.append(chunk)
            else:
                pieces.extend(self._encode_chunk(chunk))
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with bos when the checkpoint adds it."""
        ids = [self.sp.piece_to_id(p) for p in self.tokenize(text)]
        return ([self.bos_id] if self.add_bos else []) + ids

    def encode_with_images(self, prompt: str) -> torch.Tensor:
        """Ids of a prompt whose `<image>` placeholders become IMAGE_TOKEN_INDEX, as LLaVA's
        `tokenizer_image_token`: each chunk is tokenized on its own, and only the first keeps bos."""
        chunks = [self.encode(chunk) for chunk in prompt.split(IMAGE_PLACEHOLDER)]
        has_bos = bool(chunks[0]) and chunks[0][0] == self.bos_id
        ids: list[int] = chunks[0][:1] if has_bos else []
        for i, chunk in enumerate(chunks):
            if i > 0:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(chunk[1:] if has_bos else chunk)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids with special tokens skipped (`skip_special_tokens=True`)."""
        special_ids = {self.sp.piece_to_id(t) for t in self.special_tokens}
        pieces = [self.sp.id_to_piece(i) for i in ids if i not in special_ids and 0 <= i < self.vocab_size]
        return self.sp.decode(pieces)


def load_qformer_tokenizer(bert_dir: str | Path) -> BertTokenizer:
    """The Q-Former's tokenizer: bert-base-uncased's WordPiece vocab with `[DEC]` as bos,
    truncating on the left so the end of a long question (usually the actual ask) is kept."""
    tokenizer = BertTokenizer.from_pretrained(str(bert_dir), truncation_side="left")
    tokenizer.add_special_tokens({"bos_token": QFORMER_BOS})
    return tokenizer


def qformer_inputs(tokenizer: BertTokenizer, question: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Q-Former `input_ids` and `attention_mask` for one question, each [1, L] with L <= 256."""
    encoded = tokenizer([question], padding="longest", truncation=True, max_length=QFORMER_MAX_LENGTH,
                        return_tensors="pt")
    return encoded.input_ids, encoded.attention_mask


__all__ = ["IMAGE_TOKEN_INDEX", "IMAGE_PLACEHOLDER", "LlamaPromptTokenizer", "load_qformer_tokenizer",
           "qformer_inputs"]
