"""fastai ULMFiT training: an AWD-LSTM language model on IMDB text, then a sentiment classifier
fine-tuned from its encoder. Produces fastai learners that `export/` turns into bundles."""
