"""The task. Takes a `data:` config (the embedded Rotten Tomatoes reviews, IMDB, a CSV/JSON/Parquet
file, a Hugging Face dataset, or plain text for language modelling); gives a TaskData / TextTask
split three ways, tokenized and batched (nas.data.tasks, nas.data.text, nas.data.splits)."""
