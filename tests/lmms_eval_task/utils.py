"""Document functions of the storm_clips lmms-eval task."""


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc):
    return doc["question"]


def process_results(doc, results):
    return {"accuracy": float(results[0].strip().strip(".").lower() == doc["answer"].lower())}
