"""Model families and loading. Takes a model name or folder (the embedded MiniLM, SmolLM2 from its
GGUF, a local folder or a hub name); gives the HF model and its Family (nas.models.family): the one
interface that says where layers, heads, groups, FFN neurons and hidden channels live, how to cut
them, where importance masks go, what recovery applies and how to export. Families: encoder
(BERT, RoBERTa, DistilBERT), decoder (Llama, Qwen2, Mistral); nas.models.registry finds them."""
