"""Chat templates: jaxbig's rendering equals the Hugging Face tokenizer's own
apply_chat_template (template from chat_template.jinja or from tokenizer_config.json, with
its special tokens), and conversational preference records equal TRL's
maybe_apply_chat_template split."""
import json
import os

import ml_collections
import pytest

from jaxbig.config import ConfigError
from jaxbig.data.text import chat, preference_files

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATIONS = [
    [{'role': 'user', 'content': 'Name it: def f(x): return x + 1'}],
    [{'role': 'system', 'content': 'You are terse.'}, {'role': 'user', 'content': ' hi '},
     {'role': 'assistant', 'content': 'hello'}, {'role': 'user', 'content': 'again'}],
]


@pytest.fixture(scope='module')
def hf_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(['<unk>', '<s>', '</s>', 'a', 'b'])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>',
                                 unk_token='<unk>')
    hf.chat_template = TEMPLATE
    directory = tmp_path_factory.mktemp('chat_tok')
    hf.save_pretrained(directory)
    return hf, str(directory)


def test_rendering_equals_transformers(hf_tokenizer, tmp_path):
    hf, directory = hf_tokenizer
    template = chat.for_tokenizer(os.path.join(directory, 'tokenizer.json'))
    assert template is not None
    for messages in CONVERSATIONS:
        for gen in (False, True):
            assert template.render(messages, gen) == hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen)
    # the same template kept in tokenizer_config.json only (older tokenizers)
    with open(os.path.join(directory, 'tokenizer_config.json')) as f:
        config = json.load(f)
    config['chat_template'] = TEMPLATE
    (tmp_path / 'tokenizer_config.json').write_text(json.dumps(config))
    (tmp_path / 'tokenizer.json').write_text(open(os.path.join(directory, 'tokenizer.json')).read())
    other = chat.for_tokenizer(str(tmp_path / 'tokenizer.json'))
    assert other.render(CONVERSATIONS[1], True) == template.render(CONVERSATIONS[1], True)
    with pytest.raises(ConfigError, match='unknown role robot'):
        template.render([{'role': 'robot', 'content': 'x'}])
    assert chat.for_tokenizer('bytes') is None


def test_conversational_pairs_equal_trl(hf_tokenizer, tmp_path):
    from trl.data_utils import maybe_apply_chat_template

    hf, directory = hf_tokenizer
    records = [dict(prompt=CONVERSATIONS[i], chosen=[{'role': 'assistant', 'content': c}],
                    rejected=[{'role': 'assistant', 'content': r}])
               for i, (c, r) in enumerate([('f_plus_one', 'g'), ('hi again', 'no')])]
    path = tmp_path / 'prefs.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    cfg = ml_collections.ConfigDict(dict(path=str(path), splits='train=*', prompt_key='prompt',
                                         chosen_key='chosen', rejected_key='rejected',
                                         tokenizer=os.path.join(directory, 'tokenizer.json')))
    pairs = preference_files.load_pairs(cfg, 'train')
    for (where, prompt, chosen, rejected), record in zip(pairs, records):
        want = maybe_apply_chat_template(record, hf)
        assert (prompt, chosen, rejected) == (want['prompt'], want['chosen'], want['rejected'])
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps(dict(records[0], prompt=[*CONVERSATIONS[0],
                                                       {'role': 'assistant', 'content': 'x'}]))
                   + '\n')
    with pytest.raises(ConfigError, match='bad.jsonl:1: the prompt ends with'):
        preference_files.load_pairs(dict(cfg, path=str(bad)), 'train')


def test_import_keeps_the_chat_template_beside_the_tokenizer(hf_tokenizer, tmp_path):
    import numpy as np

    from jaxbig.interop import tensors

    hf, directory = hf_tokenizer
    workdir = str(tmp_path / 'run')
    config = ml_collections.ConfigDict({'data': {'tokenizer': 'bytes'}})
    tensors.write_workdir(workdir, config, {'w': np.zeros(2, np.float32)},
                          os.path.join(directory, 'tokenizer.json'))
    template = chat.for_tokenizer(os.path.join(workdir, 'tokenizer.json'))
    assert template.render(CONVERSATIONS[1], True) == hf.apply_chat_template(
        CONVERSATIONS[1], tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------- chat data for SFT

CHATS = [{'messages': [{'role': 'user', 'content': f'add {i} and {i}'},
                       {'role': 'assistant', 'content': f'{2 * i}'},
                       {'role': 'user', 'content': 'and times 2?'},
                       {'role': 'assistant', 'content': f'{4 * i}'}]} for i in range(60)]


def test_chunks_mark_each_assistant_turn(hf_tokenizer):
    hf, directory = hf_tokenizer
    template = chat.for_tokenizer(os.path.join(directory, 'tokenizer.json'))
    messages = CHATS[3]['messages']
    chunks = template.chunks(messages)
    assert ''.join(t for t, _ in chunks) == hf.apply_chat_template(messages, tokenize=False)
    assert [t for t, a in chunks if a] == ['6<|im_end|>\n</s>', '12<|im_end|>\n</s>']
    with pytest.raises(ConfigError, match='no assistant message'):
        template.chunks(messages[:1])


def chat_config(path, **overrides):
    from jaxbig import defaults

    return ml_collections.ConfigDict({**defaults.conditional_data('name', 192), 'name': 'files',
                                      'path': str(path), 'splits': 'validation=0.1',
                                      **overrides})


def test_chat_rows_learn_every_assistant_turn_only(tmp_path):
    from jaxbig.data.pipelines import conditional

    path = tmp_path / 'chats.jsonl'
    path.write_text(''.join(json.dumps(c) + '\n' for c in CHATS))
    pipe = conditional.build_pipeline(chat_config(path, pack=False), split='train',
                                      batch_size=4, seed=0)
    assert len(pipe.examples) == 54
    batch = pipe.get_batch(0)
    for r in range(4):
        text = bytes(batch['inputs'][r].tolist() + [batch['targets'][r][-1]]).decode()
        learnt = bytes(batch['targets'][r][batch['mask'][r] > 0].tolist()).decode()
        i = int(text.split('add ')[1].split(' ')[0])
        assert learnt == f'{2 * i}<|im_end|>\n{4 * i}<|im_end|>\n\0'  # both turns + eos
        assert text.startswith('<|im_start|>user\nadd ')
    prompt, reference = pipe.generation_examples(1)[0]
    assert bytes(prompt.tolist()).decode().endswith('times 2?<|im_end|>\n<|im_start|>assistant\n')
    assert reference.endswith('<|im_end|>\n')
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps({'text': 'x'}) + '\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1: no data.messages_key='messages'"):
        conditional.build_pipeline(chat_config(bad, splits='train=*'), split='train',
                                   batch_size=1, seed=0)


def test_sft_cli_on_chat_data(tmp_path):
    from conftest import metric_series, run_cli

    path = tmp_path / 'chats.jsonl'
    path.write_text(''.join(json.dumps(c) + '\n' for c in CHATS))
    workdir = str(tmp_path / 'sft')
    run_cli('train', '--config', f'experiments/sft.py:data={path},steps=8,batch=8,seq=192',
            '--workdir', workdir, '--config.model.num_layers=1', '--config.model.embed_dim=32',
            '--config.model.num_heads=2', '--config.model.mlp_dim=64',
            '--config.data.splits=validation=0.1', '--config.optimizer.lr=1e-2',
            '--config.train.log_every=4', '--config.evals.gen.num_examples=2')
    loss = metric_series(workdir)
    assert loss[8] < loss[4], loss
    assert metric_series(workdir, 'val/num_examples')[8] == 6
