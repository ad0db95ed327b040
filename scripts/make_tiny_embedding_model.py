#!/usr/bin/env python
"""Make atomr's built-in tiny text-embedding model, offline and reproducibly.

The script carries its own labelled sentences: short English sentences in ten topic groups
(weather, cooking, sport, programming, music, travel, health, finance, gardening, space), and a
lexicon of each topic's common words. Every fifth sentence of each group is held out
(`held_out()`): neither the tokenizer nor the model sees it, so it can measure whether related
texts land closer together than unrelated ones (tests/test_embeddings.py). From the rest and the
lexicon (`training_texts()`) it trains a byte-level BPE tokenizer (HF `tokenizers`, lower-cased)
and a tiny `BertModel` text encoder (hidden 128, 2 layers, 4 heads, at most 128 tokens) with a
supervised contrastive loss: in every batch, texts of one topic are pulled together and those of
other topics pushed apart. It writes:

    <out>/onnx/model.onnx             the encoder with mean pooling over the attention mask and L2
                                      normalisation inside the graph: inputs `input_ids` and
                                      `attention_mask` (int64, batch x tokens), output
                                      `embeddings` (float32, batch x 128, unit length)
    <out>/onnx/tokenizer.json         the tokenizer
    <out>/onnx/embedding_config.json  dimensions, max_length, pooling, pad_token_id, tensor names
    <out>/MANIFEST.json               sha256 and size of every file above, and the training facts

Re-running it gives byte-identical files (one thread, seed 0, deterministic algorithms, fixed
batch order). The default output folder is the package's `atomr/models/tiny-embed`, which is
shipped so that using the model needs only onnxruntime and tokenizers; only this script needs
torch and transformers.

    python scripts/make_tiny_embedding_model.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "atomr" / "models" / "tiny-embed"

VOCAB_SIZE = 1024
MAX_LENGTH = 128
HIDDEN = 128
DEFAULT_STEPS = 400
PER_TOPIC = 4  # texts of each topic in a training batch
TEMPERATURE = 0.1
SEED = 0
PAD = "<pad>"
HOLD_OUT_EVERY = 5  # every fifth sentence of a topic is held out

TOPICS: dict[str, tuple[str, ...]] = {
    "weather": (
        "It is raining hard this morning.",
        "The forecast says snow tomorrow.",
        "A warm sunny afternoon with a light breeze.",
        "Thunder and lightning kept us awake all night.",
        "Heavy clouds are rolling in from the west.",
        "The temperature dropped below freezing overnight.",
        "Bring an umbrella, showers are expected later.",
        "Strong winds knocked over the fence.",
        "The fog was so thick we could not see the road.",
        "Summer heat waves are getting longer.",
        "A storm warning was issued for the coast.",
        "The sky cleared up after the rain.",
        "Frost covered the car windows at dawn.",
        "Humidity makes the hot days feel worse.",
        "The weather report predicts a mild weekend.",
        "Hail the size of marbles fell in the afternoon.",
        "A cold front will bring lower temperatures.",
        "It was cloudy and grey all day.",
        "The wind is blowing from the north today.",
        "Snowfall closed the mountain pass.",
        "Drizzle and mist made the streets wet.",
        "The forecast calls for sunshine and warm air.",
        "Lightning struck a tree during the thunderstorm.",
        "Winter mornings are dark, cold and icy.",
        "A rainbow appeared after the shower.",
        "Meteorologists track the hurricane over the ocean.",
        "The rain will stop by the evening.",
        "Temperatures will rise to thirty degrees tomorrow.",
        "Gusty wind and sleet are expected tonight.",
        "A dry spell left the fields without rain.",
    ),
    "cooking": (
        "Chop the onions and fry them in olive oil.",
        "Bake the cake for forty minutes at medium heat.",
        "This soup needs more salt and pepper.",
        "Whisk the eggs with sugar until fluffy.",
        "Simmer the tomato sauce for an hour.",
        "The recipe calls for two cups of flour.",
        "Roast the chicken with garlic and lemon.",
        "Knead the dough and let it rise.",
        "Season the steak before grilling it.",
        "Stir the risotto slowly while adding broth.",
        "Boil the pasta in salted water.",
        "Melt the butter in a small pan.",
        "Slice the vegetables into thin strips.",
        "Preheat the oven before baking the bread.",
        "Add fresh herbs to the salad dressing.",
        "The kitchen smells of cinnamon and baked apples.",
        "Marinate the fish in soy sauce and ginger.",
        "Grate some cheese over the warm pasta.",
        "Peel and mash the boiled potatoes.",
        "Cook the rice until the water is absorbed.",
        "Fold the cream gently into the batter.",
        "Sear the meat in a hot pan.",
        "The chef tasted the sauce and added basil.",
        "Dice the carrots for the stew.",
        "Let the cookies cool on a rack.",
        "Stir fry the noodles with vegetables.",
        "The pie crust should be golden and crisp.",
        "Toast the spices before grinding them.",
        "Serve the curry with rice and yogurt.",
        "Beat the batter until it is smooth.",
    ),
    "sport": (
        "The striker scored a goal in the last minute.",
        "Our team won the championship final.",
        "She runs ten kilometres every morning.",
        "The referee showed him a red card.",
        "The tennis match went to a fifth set.",
        "The coach changed the lineup at halftime.",
        "He swam four laps of the pool.",
        "The basketball player made a three point shot.",
        "Fans cheered as the runners crossed the finish line.",
        "The goalkeeper saved a penalty kick.",
        "The cyclists climbed the steep mountain stage.",
        "Training starts at seven in the stadium.",
        "The boxer won the fight by knockout.",
        "The league season ends in May.",
        "She set a new world record in the sprint.",
        "The team practised passing and shooting drills.",
        "The match was tied at the end of regular time.",
        "The marathon runners passed the halfway mark.",
        "He hit a home run in the ninth inning.",
        "The players celebrated their victory with the fans.",
        "The skier raced down the slalom course.",
        "The quarterback threw a long pass.",
        "Our club lost the game on penalties.",
        "The athletes warmed up before the race.",
        "She won a gold medal at the games.",
        "The defender blocked the shot near the goal.",
        "The rugby team scored a late try.",
        "The golfer sank a long putt.",
        "The volleyball team won the final set.",
        "The coach praised the team after the win.",
    ),
    "programming": (
        "The function returns a list of strings.",
        "Fix the bug in the parser before release.",
        "Write unit tests for the new module.",
        "The compiler reports a type error on line ten.",
        "We refactored the code into smaller functions.",
        "The program crashed with a null pointer exception.",
        "Use a dictionary to look up the keys quickly.",
        "Commit your changes and open a pull request.",
        "The loop iterates over every item in the array.",
        "Python scripts are easy to read and debug.",
        "The server code handles requests asynchronously.",
        "Declare the variable before using it.",
        "The algorithm sorts the numbers in linear time.",
        "The database query needs an index to be fast.",
        "A class defines methods and attributes.",
        "The stack trace points to the failing function.",
        "Merge the feature branch into main.",
        "The API returns JSON with a status code.",
        "Install the package with the package manager.",
        "The developer wrote a recursive function.",
        "Compile the source code and run the tests.",
        "The software has a memory leak.",
        "Use version control to track code changes.",
        "The interface hides the implementation details.",
        "The test suite passed after the fix.",
        "Debug the program with breakpoints.",
        "The script reads a file and parses each line.",
        "Threads share memory and need locks.",
        "The code review found a bug in the loop.",
        "Deploy the new version of the service.",
    ),
    "music": (
        "She plays the piano beautifully.",
        "The band released a new album last week.",
        "The guitar solo was the best part of the song.",
        "The orchestra performed a symphony by Beethoven.",
        "He sings in a choir every Sunday.",
        "The concert was sold out.",
        "The drummer kept a steady rhythm.",
        "This melody is catchy and upbeat.",
        "The violinist tuned her strings before the show.",
        "Jazz musicians often improvise.",
        "The song topped the charts for weeks.",
        "The singer forgot the lyrics on stage.",
        "I listen to music while I work.",
        "The composer wrote a new opera.",
        "The bass line drives the whole track.",
        "They rehearsed the chorus many times.",
        "The festival featured rock and pop bands.",
        "She is learning to play the violin.",
        "The record has a warm acoustic sound.",
        "The pianist played a sonata by Mozart.",
        "The audience applauded after the encore.",
        "He composed a song for his friend.",
        "The band tours every summer.",
        "The tempo of this song is slow.",
        "The saxophone played a smooth jazz tune.",
        "The concert hall has great acoustics.",
        "Musicians practise scales every day.",
        "The album mixes folk and electronic music.",
        "The choir sang a hymn in harmony.",
        "The guitarist played chords and a melody.",
    ),
    "travel": (
        "Our flight to Rome leaves at noon.",
        "We booked a hotel near the beach.",
        "Pack your passport and your luggage.",
        "The train to the city takes two hours.",
        "They went backpacking across Europe.",
        "The airport was crowded with tourists.",
        "We rented a car to explore the island.",
        "The tour guide showed us the old castle.",
        "Check in online before your flight.",
        "The cruise ship stopped at three ports.",
        "We visited museums and markets in the capital.",
        "The hostel was cheap and friendly.",
        "Tourists took photos of the famous bridge.",
        "Our luggage was lost at the airport.",
        "The road trip took us through the desert.",
        "We need a visa to visit that country.",
        "The sightseeing bus stops at every monument.",
        "They spent their holiday on a tropical island.",
        "Book the tickets early for a cheaper fare.",
        "The hotel room had a view of the sea.",
        "We missed the connecting flight.",
        "The ferry crossed the bay to the old town.",
        "A map helps you find your way in a new city.",
        "The journey by bus was long but scenic.",
        "We stayed at a guesthouse in the mountains.",
        "Travellers exchanged money at the border.",
        "The passport control line was very long.",
        "She travels abroad every summer vacation.",
        "The resort offers tours of the countryside.",
        "We boarded the plane after a short delay.",
    ),
    "health": (
        "The doctor prescribed antibiotics for the infection.",
        "Drink plenty of water and get enough sleep.",
        "Regular exercise lowers blood pressure.",
        "The patient recovered after the surgery.",
        "A balanced diet keeps you healthy.",
        "She has a fever and a sore throat.",
        "The nurse measured his heart rate.",
        "Vaccines protect against many diseases.",
        "The hospital opened a new clinic.",
        "Take this medicine twice a day after meals.",
        "Stress can cause headaches and fatigue.",
        "The dentist cleaned my teeth.",
        "He broke his arm and wears a cast.",
        "Wash your hands to prevent illness.",
        "The symptoms include cough and chills.",
        "The doctor checked her blood test results.",
        "Smoking damages the lungs.",
        "Physical therapy helped his knee heal.",
        "Eating vegetables is good for your health.",
        "The clinic treats patients with allergies.",
        "A flu virus spreads quickly in winter.",
        "The surgeon operated on the injured patient.",
        "Get a checkup with your doctor every year.",
        "The pharmacy sells medicine and vitamins.",
        "Sleep helps the body recover.",
        "The nurse gave the patient an injection.",
        "Too much sugar can lead to diabetes.",
        "The infection caused a high fever.",
        "Meditation can reduce anxiety.",
        "The doctor recommended rest and fluids.",
    ),
    "finance": (
        "The bank raised interest rates again.",
        "Stock prices fell sharply on Monday.",
        "She saves part of her salary every month.",
        "Investors are worried about inflation.",
        "The company reported higher profits this quarter.",
        "He took out a loan to buy a house.",
        "Pay off your credit card debt first.",
        "The market rallied after the announcement.",
        "Diversify your investments to reduce risk.",
        "The budget shows expenses and income.",
        "The currency lost value against the dollar.",
        "Taxes are due at the end of April.",
        "The fund invests in bonds and shares.",
        "The mortgage payment is due every month.",
        "Shareholders received a dividend.",
        "The economy grew faster than expected.",
        "Open a savings account at the bank.",
        "The accountant balanced the company books.",
        "Inflation makes groceries more expensive.",
        "The stock market closed higher today.",
        "Interest on the loan adds up over time.",
        "She invested her money in an index fund.",
        "The startup raised money from investors.",
        "The bank approved the mortgage application.",
        "Bond yields rose this week.",
        "Keep track of your spending with a budget.",
        "The firm cut costs to improve profits.",
        "Exchange rates change every day.",
        "The pension fund grew over the year.",
        "He pays rent and saves the rest of his income.",
    ),
    "gardening": (
        "Plant the tomato seedlings in spring.",
        "Water the flowers early in the morning.",
        "The roses need pruning in winter.",
        "Pull the weeds out of the vegetable bed.",
        "Compost makes the soil rich.",
        "The tulip bulbs bloomed in April.",
        "Mow the lawn every week in summer.",
        "Sow the seeds in rows and cover them with soil.",
        "The garden hose has a leak.",
        "Dig a hole twice as wide as the roots.",
        "Aphids are eating the leaves of the plants.",
        "Mulch keeps the soil moist.",
        "The apple tree gave a big harvest.",
        "Repot the houseplant into a bigger pot.",
        "Trim the hedge along the path.",
        "The herbs grow well on a sunny windowsill.",
        "Fertilize the garden beds in spring.",
        "Rake the fallen leaves in autumn.",
        "The seedlings sprouted after a week.",
        "Grow lettuce and carrots in raised beds.",
        "The gardener planted shrubs by the fence.",
        "Prune the dead branches off the tree.",
        "Sunflowers grow tall in the summer sun.",
        "Water the plants at their roots.",
        "The vegetable garden needs more sunlight.",
        "She planted lavender along the path.",
        "Worms improve the garden soil.",
        "Harvest the beans when the pods are firm.",
        "The greenhouse protects the young plants.",
        "Weeding the flower beds takes all afternoon.",
    ),
    "space": (
        "The rocket launched the satellite into orbit.",
        "Astronauts live on the space station.",
        "The telescope observed a distant galaxy.",
        "Mars has the tallest volcano in the solar system.",
        "The moon orbits the earth every month.",
        "A comet passed close to the sun.",
        "The spacecraft landed on the surface of Mars.",
        "Stars are born in clouds of gas and dust.",
        "Jupiter is the largest planet.",
        "The astronaut went on a spacewalk.",
        "Black holes bend light around them.",
        "The probe sent photos of Saturn's rings.",
        "Astronomers discovered a new exoplanet.",
        "The rover drove across the red planet.",
        "A solar eclipse darkened the sky.",
        "The shuttle docked with the space station.",
        "Galaxies contain billions of stars.",
        "The launch was delayed by a fuel leak.",
        "The planet orbits a small red star.",
        "Meteors streaked across the night sky.",
        "The space agency plans a mission to the moon.",
        "Astronauts trained for the long mission.",
        "The satellite photographs the earth from orbit.",
        "Neptune is the farthest planet from the sun.",
        "The telescope measured the light of the star.",
        "The lunar lander touched down safely.",
        "The universe is expanding.",
        "The rocket engine burned for ten minutes.",
        "Astronomers study the orbits of asteroids.",
        "The space probe flew past the outer planets.",
    ),
}

# Each topic's common words, learnt as one-word texts of their topic: with so few sentences, most
# words of an unseen sentence would otherwise be unknown to the model (a real embedding model
# learns them from a large corpus).
LEXICON: dict[str, str] = {
    "weather": (
        "weather forecast rain rainy snow snowy sun sunny sunshine cloud clouds cloudy wind windy storm "
        "stormy thunder lightning fog foggy mist frost ice icy hail sleet drizzle shower showers humid "
        "humidity temperature degrees heat hot cold chilly warm freezing breeze climate season rainbow "
        "hurricane tornado umbrella"
    ),
    "cooking": (
        "cook cooking recipe kitchen chef oven stove pan pot bake baking roast fry boil simmer grill stir "
        "chop slice dice whisk knead dough flour sugar salt pepper butter oil garlic onion sauce soup "
        "stew spice spices herbs cheese bread cake dessert dinner meal taste delicious ingredients"
    ),
    "sport": (
        "sport sports team game match play player players coach goal score scored win won lose lost "
        "champion championship league tournament final ball football soccer tennis basketball baseball "
        "golf rugby hockey race racing runner run running swim cycling stadium referee fans medal athlete "
        "training"
    ),
    "programming": (
        "code coding program programming programmer developer software function functions class method "
        "variable loop array list string bug bugs debug compiler compile python java javascript script "
        "api server database query test tests commit branch repository git deploy library module error "
        "exception syntax algorithm"
    ),
    "music": (
        "music musical musician song songs sing singer singing band album concert guitar piano violin "
        "drums drummer bass jazz rock pop classical orchestra symphony choir melody rhythm tempo chord "
        "chords lyrics tune opera composer stage record playlist listen"
    ),
    "travel": (
        "travel traveller trip journey holiday vacation tourist tourists tour flight fly plane airport "
        "airline passport visa luggage suitcase hotel hostel resort booking ticket train station bus "
        "ferry cruise beach island abroad destination sightseeing map border guide explore"
    ),
    "health": (
        "health healthy doctor nurse hospital clinic patient patients medicine medication pill pills "
        "prescription treatment therapy surgery surgeon illness disease sick sickness fever cough cold "
        "flu virus infection pain injury vaccine symptoms diet exercise sleep blood heart dentist "
        "pharmacy"
    ),
    "finance": (
        "money finance financial bank banking loan loans debt credit interest rate rates invest investor "
        "investors investment stock stocks shares market bond bonds fund funds budget savings save tax "
        "taxes income salary profit profits dividend inflation economy currency dollar mortgage pension "
        "price"
    ),
    "gardening": (
        "garden gardening gardener plant plants planting seed seeds seedling soil compost weed weeds "
        "weeding flower flowers rose roses tulip lawn grass hedge shrub tree trees leaves root roots "
        "water watering prune pruning harvest vegetable vegetables fertilizer mulch greenhouse pot bloom"
    ),
    "space": (
        "space planet planets star stars sun moon earth mars jupiter saturn galaxy galaxies universe "
        "orbit rocket launch satellite astronaut astronauts spacecraft spaceship shuttle telescope "
        "astronomer astronomy comet asteroid meteor eclipse nasa mission rover probe cosmic solar lunar"
    ),
}


def _is_held_out(index: int) -> bool:
    return index % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1


def training_texts() -> list[tuple[str, str]]:
    """(topic, text) the tokenizer and the model learn from, in a fixed order: the sentences that
    are not held out, then the lexicon's words."""
    out = [(t, s) for t, group in TOPICS.items() for i, s in enumerate(group) if not _is_held_out(i)]
    return out + [(t, w) for t, words in LEXICON.items() for w in words.split()]


def held_out() -> list[tuple[str, str]]:
    """(topic, sentence) never seen in training: for measuring the model."""
    return [(t, s) for t, group in TOPICS.items() for i, s in enumerate(group) if _is_held_out(i)]


def train_tokenizer(sentences: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer=trainer)
    return tok


def encode(tok: Any, sentences: list[str]) -> tuple[Any, Any]:
    """Right-padded token ids and attention mask (int64) of `sentences`."""
    import torch

    seqs = [tok.encode(s).ids for s in sentences]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.token_to_id(PAD), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def make_encoder(vocab_size: int, pad_id: int) -> Any:
    """The encoder: BertModel, then mean pooling over the attention mask and L2 normalisation."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=1,
        pad_token_id=pad_id,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    config._attn_implementation = "eager"  # traceable by the ONNX exporter

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config, add_pooling_layer=False)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            return torch.nn.functional.normalize(mean, p=2.0, dim=-1)

    return Encoder()


def contrastive_loss(vectors: Any, labels: Any) -> Any:
    """Supervised contrastive loss: each sentence's same-topic batch mates are its positives."""
    import torch

    sims = vectors @ vectors.T / TEMPERATURE
    eye = torch.eye(len(labels), dtype=torch.bool)
    sims = sims.masked_fill(eye, -1e9)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = sims - torch.logsumexp(sims, dim=1, keepdim=True)
    return -(log_prob * positives).sum(dim=1).div(positives.sum(dim=1)).mean()


def batch_indices(by_topic: list[list[int]], step: int) -> list[int]:
    """PER_TOPIC texts of every topic, rotating through each topic's texts."""
    out = []
    for group in by_topic:
        start = (step * PER_TOPIC) % len(group)
        out += [group[(start + j) % len(group)] for j in range(PER_TOPIC)]
    return out


def train(tok: Any, steps: int) -> tuple[Any, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    data = training_texts()
    topics = list(TOPICS)
    ids, mask = encode(tok, [s for _, s in data])
    labels = torch.tensor([topics.index(t) for t, _ in data])
    by_topic = [[i for i, (t, _) in enumerate(data) if t == topic] for topic in topics]
    model = make_encoder(tok.get_vocab_size(), tok.token_to_id(PAD))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(steps):
        idx = batch_indices(by_topic, step)
        width = int(mask[idx].sum(dim=1).max())
        loss = contrastive_loss(model(ids[idx, :width], mask[idx, :width]), labels[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d} loss {loss_value:.4f} ({time.perf_counter() - started:.1f}s)", flush=True)
    model.eval()
    info = {
        "steps": steps,
        "final_loss": round(loss_value, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_texts": len(data),
        "held_out_sentences": len(held_out()),
    }
    return model, info


def export(model: Any, tok: Any, onnx_dir: Path) -> None:
    import torch

    ids, mask = encode(tok, ["A sentence to trace the graph with.", "Another one."])
    onnx_dir.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches of shapes
        torch.onnx.export(
            model,
            (ids, mask),
            str(onnx_dir / "model.onnx"),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embeddings": {0: "batch"},
            },
            opset_version=17,
        )
    tok.save(str(onnx_dir / "tokenizer.json"))
    config = {
        "dimensions": HIDDEN,
        "max_length": MAX_LENGTH,
        "pooling": ("mean"),
        "normalized": True,
        "pad_token_id": tok.token_to_id(PAD),
        "inputs": ["input_ids", "attention_mask"],
        "output": ("embeddings"),
    }
    write_json(onnx_dir / "embedding_config.json", config)


def check_export(model: Any, tok: Any, onnx_dir: Path) -> dict[str, float]:
    """ONNX Runtime's vectors of the held-out sentences: that they are torch's, and how well they
    group (mean cosine of same-topic pairs and of other-topic pairs)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    test = held_out()
    ids, mask = encode(tok, [s for _, s in test])
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = model(ids, mask).numpy()
    drift = float(np.abs(got - want).max())
    if drift > 1e-4:
        raise SystemExit(f"ONNX Runtime's vectors differ from torch's by {drift}")
    sims = got @ got.T
    same = np.array([[a == b for b, _ in test] for a, _ in test])
    off_diagonal = ~np.eye(len(test), dtype=bool)
    return {
        "held_out_related_cosine": round(float(sims[same & off_diagonal].mean()), 4),
        "held_out_unrelated_cosine": round(float(sims[~same].mean()), 4),
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_manifest(out: Path, info: dict[str, Any]) -> dict[str, Any]:
    files = {}
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json"):
        data = f.read_bytes()
        files[f.relative_to(out).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {"model": "tiny-embed", "made_by": "scripts/make_tiny_embedding_model.py", **info, "files": files}
    write_json(out / "MANIFEST.json", manifest)
    return manifest


def _one_thread() -> None:
    """One thread everywhere, before torch and tokenizers start their pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    args = ap.parse_args(argv)
    _one_thread()
    out: Path = args.out.resolve()
    onnx_dir = out / "onnx"
    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    started = time.perf_counter()
    tok = train_tokenizer([s for _, s in training_texts()])
    model, info = train(tok, args.steps)
    export(model, tok, onnx_dir)
    info.update(check_export(model, tok, onnx_dir), dimensions=HIDDEN, max_length=MAX_LENGTH)
    manifest = write_manifest(out, info)
    total = sum(f["bytes"] for f in manifest["files"].values())
    elapsed = time.perf_counter() - started
    print(f"wrote {out} ({len(manifest['files'])} files, {total / 1e6:.2f} MB) in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
