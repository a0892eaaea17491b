"""The merge engine, by job (modelglue.merge is its front door):

- plan.py     recipe -> Plan: every output tensor with its inputs, resolved and checked
              parameters, shape and dtype; reads headers and config.json only.
- execute.py  Executor: walks a plan once (fetch inputs, run the method, hand results to
              a sink), with prefetching, chunked streaming and prepare-ahead threads; the
              sources (disk, resident) and the background writer of merge-to-disk.
- output.py   config.json, model card and recipe copy of a merged model directory.
- vocab.py    tokenizer_source / tokenizer: the output vocabulary and, per vocabulary
              tensor, the prepare step that aligns each input's rows to it (planned by plan.py).
"""
