#!/usr/bin/env python3
"""A small synthetic fine-tuning dataset about a fictional company (Lumora Robotics / 鹿鸣机器人), in
OpenAI chat JSONL: facts about products, prices, policies and support, asked in several English and Chinese
phrasings. The held-out file asks the same facts in paraphrases that never appear in training, so answering
them right shows the model learned the facts, not the strings. Deterministic; no randomness.

Usage: python3 tools/make_company_data.py [--out fixtures/finetune]
"""
import argparse
import json
from pathlib import Path

SYSTEM = "You are the customer support assistant of Lumora Robotics."
# (fact id, answer, [training questions], [held-out paraphrases], key phrase the answer must contain)
FACTS = [
    ("mower-price", "The Lumora GrassPilot robot mower costs 1,299 dollars.",
     ["How much is the GrassPilot?", "What does the GrassPilot robot mower cost?", "Price of the GrassPilot mower?",
      "GrassPilot 割草机多少钱？"],
     ["What's the price tag on your GrassPilot lawn robot?", "How expensive is the GrassPilot?"], "1,299"),
    ("vacuum-price", "The Lumora DustFox robot vacuum costs 349 dollars.",
     ["How much is the DustFox?", "What does the DustFox vacuum cost?", "Price of the DustFox robot vacuum?",
      "DustFox 扫地机器人多少钱？"],
     ["How much would a DustFox set me back?", "What is the DustFox selling for?"], "349"),
    ("returns", "You can return any Lumora product within 45 days of delivery for a full refund.",
     ["What is your return policy?", "How long do I have to return a product?", "Can I return my robot?",
      "退货政策是什么？"],
     ["If I change my mind, how many days do I get to send it back?", "What's the window for returns?"], "45 days"),
    ("warranty", "Every Lumora robot comes with a 3-year warranty.",
     ["How long is the warranty?", "What warranty do your robots have?", "Is there a warranty?",
      "保修期多长？"],
     ["For how many years is my robot covered?", "How long does the guarantee last?"], "3-year"),
    ("hours", "Lumora support is open Monday to Saturday, 8 am to 8 pm.",
     ["When is support open?", "What are your support hours?", "Can I call support on Sunday?",
      "客服几点上班？"],
     ["At what times can I reach your help desk?", "When can I contact customer service?"], "8 am to 8 pm"),
    ("hq", "Lumora Robotics is headquartered in Hangzhou and was founded in 2019.",
     ["Where is Lumora based?", "Where is your headquarters?", "When was Lumora founded?",
      "公司总部在哪里？"],
     ["In which city are you located?", "Which city is Lumora's home?"], "Hangzhou"),
]


def record(q, a):
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": q},
                         {"role": "assistant", "content": a}]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fixtures/finetune")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w") as f:
        for _, ans, qs, _, _ in FACTS:
            for q in qs:
                f.write(json.dumps(record(q, ans), ensure_ascii=False) + "\n")
    with open(out / "heldout.jsonl", "w") as f:
        for fid, ans, _, held, key in FACTS:
            for q in held:
                r = record(q, ans)
                r["fact"] = fid
                r["key"] = key
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
