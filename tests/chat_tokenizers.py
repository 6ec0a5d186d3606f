"""Small byte-level BPE tokenizers with ChatML and Llama-3 chat templates, for tests."""

import pytest
from transformers import PreTrainedTokenizerFast

from stjax.toy.build import train_byte_level_bpe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML = ("{% if messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}"
          "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# Generation prompt differs from how a history assistant turn is rendered ("Assistant" vs "assistant").
BROKEN_TEXT = CHATML.replace("'<|im_start|>assistant\\n'", "'<|im_start|>Assistant\\n'")
# Generation prompt ends in a space the response's first word merges with ("Ġpositive" is one token).
BROKEN_MERGE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
CORPUS = [("You are a helpful assistant. Analyze the sentiment of the input, and respond only positive or "
           "negative. Sure, here is the answer: positive negative user assistant system the a film")] * 4


@pytest.fixture(scope="module")
def bpe():
    return train_byte_level_bpe(CORPUS, 400, SPECIALS)


def wrap(bpe, template, eos="<|im_end|>"):
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token=eos,
                                   pad_token="<|endoftext|>", chat_template=template)


@pytest.fixture(scope="module")
def chatml(bpe):
    return wrap(bpe, CHATML)


@pytest.fixture(scope="module")
def llama3(bpe):
    return wrap(bpe, LLAMA3, eos="<|eot_id|>")
