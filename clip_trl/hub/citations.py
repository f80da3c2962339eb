"""BibTeX entries that model cards cite, by key.

Trainers and configs name the works their method rests on by key (see
[`ClipBaseConfig.model_card_citations`][clip_trl.ClipBaseConfig.model_card_citations]); the card looks the keys up
here. A new method adds its entries to `BIBTEX` (or gives a whole BibTeX entry, starting with `@`, instead of a
key), and the model card code needs no change.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["BIBTEX", "bibtex_entries"]

BIBTEX: dict[str, str] = {
    "clip": """@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and
               Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and
               Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {139},
  pages     = {8748--8763},
  year      = {2021}
}""",
    "siglip": """@inproceedings{zhai2023siglip,
  title     = {Sigmoid Loss for Language Image Pre-Training},
  author    = {Zhai, Xiaohua and Mustafa, Basil and Kolesnikov, Alexander and Beyer, Lucas},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {11975--11986},
  year      = {2023}
}""",
    "grpo": """@article{shao2024deepseekmath,
  title   = {{DeepSeekMath}: Pushing the Limits of Mathematical Reasoning in Open Language Models},
  author  = {Shao, Zhihong and Wang, Peiyi and Zhu, Qihao and Xu, Runxin and Song, Junxiao and Bi, Xiao and
             Zhang, Haowei and Zhang, Mingchuan and Li, Y. K. and Wu, Y. and Guo, Daya},
  journal = {arXiv preprint arXiv:2402.03300},
  year    = {2024}
}""",
    "rloo": """@inproceedings{ahmadian2024rloo,
  title     = {Back to Basics: Revisiting {REINFORCE}-Style Optimization for Learning from Human Feedback
               in {LLMs}},
  author    = {Ahmadian, Arash and Cremer, Chris and Gall{\\'e}, Matthias and Fadaee, Marzieh and Kreutzer, Julia
               and Pietquin, Olivier and {\\"U}st{\\"u}n, Ahmet and Hooker, Sara},
  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2024}
}""",
    "reinforce": """@article{williams1992reinforce,
  title   = {Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement Learning},
  author  = {Williams, Ronald J.},
  journal = {Machine Learning},
  volume  = {8},
  pages   = {229--256},
  year    = {1992}
}""",
    "lora": """@inproceedings{hu2022lora,
  title     = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author    = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and
               Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
    "dpo": """@inproceedings{rafailov2023dpo,
  title     = {Direct Preference Optimization: Your Language Model is Secretly a Reward Model},
  author    = {Rafailov, Rafael and Sharma, Archit and Mitchell, Eric and Ermon, Stefano and Manning, Christopher D.
               and Finn, Chelsea},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2023}
}""",
    "ipo": """@inproceedings{azar2024ipo,
  title     = {A General Theoretical Paradigm to Understand Learning from Human Preferences},
  author    = {Azar, Mohammad Gheshlaghi and Guo, Zhaohan Daniel and Piot, Bilal and Munos, Remi and Rowland, Mark
               and Valko, Michal and Calandriello, Daniele},
  booktitle = {Proceedings of the 27th International Conference on Artificial Intelligence and Statistics (AISTATS)},
  year      = {2024}
}""",
    "clip_po": """@inproceedings{afzali2025clippo,
  title     = {Aligning Visual Contrastive learning models via Preference Optimization},
  author    = {Afzali, Amirabbas and Khodabandeh, Borna and Rasekh, Ali and JafariNodeh, Mahyar and Kazemi, Sepehr
               and Gottschalk, Simon},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2025}
}""",
    "wise_ft": """@inproceedings{wortsman2022wiseft,
  title     = {Robust Fine-Tuning of Zero-Shot Models},
  author    = {Wortsman, Mitchell and Ilharco, Gabriel and Kim, Jong Wook and Li, Mike and Kornblith, Simon and
               Roelofs, Rebecca and Gontijo Lopes, Raphael and Hajishirzi, Hannaneh and Farhadi, Ali and
               Namkoong, Hongseok and Schmidt, Ludwig},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {7959--7971},
  year      = {2022}
}""",
}


def bibtex_entries(keys: Iterable[str]) -> list[str]:
    r"""
    The BibTeX entries for `keys`, in order and without repeats; a key that starts with `@` is an entry itself.

    Example:

    ```python
    >>> from clip_trl.hub.citations import bibtex_entries
    >>> [entry.split("{")[1].split(",")[0] for entry in bibtex_entries(["clip", "dpo", "clip"])]
    ['radford2021clip', 'rafailov2023dpo']

    ```
    """
    entries: list[str] = []
    for key in keys:
        if key.startswith("@"):
            entry = key
        elif key in BIBTEX:
            entry = BIBTEX[key]
        else:
            raise KeyError(
                f"No BibTeX entry for citation key {key!r}; known keys: {', '.join(sorted(BIBTEX))}. Add it to "
                "`clip_trl.hub.citations.BIBTEX`, or give the whole entry (a string starting with '@')."
            )
        if entry not in entries:
            entries.append(entry)
    return entries
