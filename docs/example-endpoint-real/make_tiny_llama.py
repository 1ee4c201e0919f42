# A tiny random-weight Llama with a BPE tokenizer trained here on generated English-like text.
import random, json, os
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
random.seed(0)
words = open("/usr/share/dict/words").read().split() if os.path.exists("/usr/share/dict/words") else None
base = ["time","year","people","way","day","man","thing","woman","life","child","world","school","state","family","student","group","country","problem","hand","part","place","case","week","company","system","program","question","work","government","number","night","point","home","water","room","mother","area","money","story","fact","month","lot","right","study","book","eye","job","word","business","issue","side","kind","head","house","service","friend","father","power","hour","game","line","end","member","law","the","of","and","to","in","is","summarise","text","above","ref"]
corpus = [" ".join(random.choice(base) for _ in range(40)) + " " + "".join(random.choice("0123456789-") for _ in range(12)) for _ in range(3000)]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<s>assistant:{% endif %}"
cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg)
model.save_pretrained("tiny-llama")
fast.save_pretrained("tiny-llama")
print("vocab", len(fast), "params", sum(p.numel() for p in model.parameters()))
