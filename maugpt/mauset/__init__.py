"""Building MAU-Set: the seven sources' layouts (`sources`), the data files and defect knowledge
(`knowledge`), QA construction (`qa`, `location`), grouped splits (`split`), the shard writer
(`writer`) and its statistics (`stats`), the paper's Table 1 subset (`table1`), the LLaVA-558K
captions (`llava`) and the offline synthetic set (`synthetic`). Reading it back is
:mod:`maugpt.data`'s job; what both sides agree on is :mod:`maugpt.schema`."""
