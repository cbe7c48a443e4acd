"""Model families and loading. Takes a model name or folder (the embedded MiniLM, SmolLM2 from its
GGUF, a local folder or a hub name); gives the HF model and its Family (nas.models.family): the one
interface that says where layers, heads, groups, FFN neurons and hidden channels live, how to cut
them, where importance masks go, what recovery applies and how to export (nas.models.folder writes the
HF folder). Families: encoder (BERT, RoBERTa, DistilBERT), modernbert, deberta (DeBERTa-v2/v3), decoder
(Llama, Qwen2, Mistral), qwen3, smollm3; nas.models.registry finds them."""
