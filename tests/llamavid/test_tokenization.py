
from indexer.llamavid.tokenization import IMAGE_TOKEN_INDEX, QFORMER_MAX_LENGTH, qformer_inputs


def test_image_placeholders_become_minus_200_and_only_the_first_chunk_keeps_bos(tiny_model):
    tok = tiny_model.tokenizer
    ids = tok.encode_with_images("USER: <image>\nhi<image><image>end").tolist()
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert ids.count(IMAGE_TOKEN_INDEX) == 3
    first = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[:first] == tok.encode("USER: ")  # chunks are tokenized on their own
    assert ids[first + 1:].count(IMAGE_TOKEN_INDEX) == 2


def test_leading_space_keeps_its_own_piece_like_the_slow_tokenizer(tiny_model):
    tok = tiny_model.tokenizer
    # legacy=False slow LlamaTokenizer: " x" keeps its space as an extra "▁" before the dummy prefix
    assert tok.tokenize(" leading") != tok.tokenize("leading")
    assert "".join(tok.tokenize(" leading")).startswith("\u2581\u2581")
    assert tok.encode("") == [tok.bos_id]


def test_special_tokens_in_text_map_to_their_ids(tiny_model):
    tok = tiny_model.tokenizer
    ids = tok.encode("hello</s>USER: again")
    assert tok.eos_id in ids
    assert tok.decode(ids) .startswith("hello")


def test_decode_skips_special_tokens(tiny_model):
    tok = tiny_model.tokenizer
    assert tok.decode(tok.encode("hello there") + [tok.eos_id]) == "hello there"


def test_qformer_truncates_on_the_left_at_256(tiny_model):
    long_question = "red " * 400 + "where is the blue car"
    ids, mask = qformer_inputs(tiny_model.qformer_tokenizer, long_question)
    assert ids.shape == mask.shape == (1, QFORMER_MAX_LENGTH)
    tail = qformer_inputs(tiny_model.qformer_tokenizer, "where is the blue car")[0][0, 1:].tolist()
    assert ids[0, -len(tail):].tolist() == tail  # the end of the question (the ask) survives
    assert ids[0, 0].item() == tiny_model.qformer_tokenizer.cls_token_id


def test_qformer_vocab_has_dec_as_bos(tiny_model):
    qt = tiny_model.qformer_tokenizer
    assert qt.bos_token == "[DEC]" and qt.convert_tokens_to_ids("[DEC]") == len(qt) - 1
    assert tiny_model.config.qformer.vocab_size == len(qt)
