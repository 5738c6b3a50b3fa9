import numpy as np
import pytest

QUESTION = "What happens in the video?"


def movie_embeds(model, question: str = QUESTION, num_frames: int = 4, seed: int = 0):
    """A real prompt: random frames -> features -> frame tokens -> movie prompt with a subtitle -> [L, D]."""
    size = model.config.vision.image_size
    frames = np.random.default_rng(seed).integers(0, 255, (num_frames, size, size, 3), dtype=np.uint8)
    features = model.encode_frames(model.preprocess(frames))[:, 1:]  # long-video path
    ids = model.prompt_ids(question, num_frames, mode="movie", subtitles={1: "Hello there."})
    return model.inputs_embeds(ids, model.frame_tokens(features, question))


@pytest.fixture(scope="session")
def embeds(tiny_model):
    return movie_embeds(tiny_model)


@pytest.fixture(scope="session")
def exported_tiny(tiny_model_dir, tmp_path_factory):
    from indexer.llm.export import export_llm

    return export_llm(tiny_model_dir, tmp_path_factory.mktemp("export") / "llm")
