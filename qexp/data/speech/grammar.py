"""The spoken-command grammar: Fluent Speech Commands' labels (action, object, location) and the
sentences that express each of its 31 intents."""

from __future__ import annotations

SLOT_NAMES = ("action", "object", "location")
ACTIONS = ("activate", "deactivate", "increase", "decrease", "change language", "bring")
OBJECTS = ("none", "music", "lights", "lamp", "volume", "heat", "newspaper", "juice", "socks", "shoes",
           "Chinese", "Korean", "English", "German")
LOCATIONS = ("none", "kitchen", "bedroom", "washroom")
ROOMS = LOCATIONS[1:]

_OBJECT_WORDS = {"lights": ("lights", "light"), "volume": ("volume", "sound"),
                 "heat": ("heat", "heating", "temperature"), "newspaper": ("newspaper", "paper")}
_ROOM_WORDS = {"kitchen": ("kitchen",), "bedroom": ("bedroom",), "washroom": ("washroom", "bathroom")}
_DETERMINERS = {"newspaper": ("the", "my"), "juice": ("some", "the"), "socks": ("my", "the", "some"),
                "shoes": ("my", "the")}

# (action, object) -> (rooms it can name, phrasings, phrasings that need a room).
# {o} object word, {l} room word, {d} determiner.  With a room, every plain phrasing also
# appears as "<phrasing> in the {l}".
_PHRASES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    ("activate", "lights"): (ROOMS, ("turn on the {o}", "switch on the {o}", "turn the {o} on", "{o} on",
                                     "switch the {o} on"), ("turn on the {l} {o}", "{l} {o} on", "switch on the {l} {o}")),
    ("deactivate", "lights"): (ROOMS, ("turn off the {o}", "switch off the {o}", "turn the {o} off", "{o} off",
                                       "switch the {o} off"), ("turn off the {l} {o}", "{l} {o} off", "switch off the {l} {o}")),
    ("activate", "lamp"): ((), ("turn on the lamp", "switch on the lamp", "lamp on", "turn the lamp on"), ()),
    ("deactivate", "lamp"): ((), ("turn off the lamp", "switch off the lamp", "lamp off", "turn the lamp off"), ()),
    ("activate", "music"): ((), ("play the music", "play music", "put on some music", "start the music", "music on",
                                 "turn on the music"), ()),
    ("deactivate", "music"): ((), ("stop the music", "pause the music", "turn off the music", "music off",
                                   "stop playing music"), ()),
    ("increase", "volume"): ((), ("increase the {o}", "turn up the {o}", "turn the {o} up", "{o} up", "louder",
                                  "make it louder"), ()),
    ("decrease", "volume"): ((), ("decrease the {o}", "turn down the {o}", "turn the {o} down", "{o} down",
                                  "quieter", "make it quieter", "lower the {o}"), ()),
    ("increase", "heat"): (ROOMS, ("increase the {o}", "turn up the {o}", "turn the {o} up", "make it warmer",
                                   "heat up", "raise the {o}"), ("make the {l} warmer", "{l} {o} up")),
    ("decrease", "heat"): (ROOMS, ("decrease the {o}", "turn down the {o}", "turn the {o} down", "make it cooler",
                                   "lower the {o}", "cool down"), ("make the {l} cooler", "{l} {o} down")),
    ("change language", "none"): ((), ("change language", "change the language", "switch the language",
                                       "language settings", "use a different language"), ()),
    **{("change language", lang): ((), ("change the language to {o}", "switch to {o}", "set the language to {o}",
                                        "{o} please", "use {o}", "change language to {o}"), ())
       for lang in ("Chinese", "Korean", "English", "German")},
    **{("bring", obj): ((), ("bring me {d} {o}", "get me {d} {o}", "fetch {d} {o}", "bring {d} {o}", "i need {d} {o}",
                             "go get {d} {o}"), ())
       for obj in ("newspaper", "juice", "socks", "shoes")},
}

#: the 31 intents (action, object, location), in a fixed order
INTENTS: tuple[tuple[str, str, str], ...] = tuple(
    (a, o, loc) for (a, o), (rooms, _, _) in _PHRASES.items() for loc in ("none", *rooms)
)


def phrasings(action: str, obj: str, location: str) -> list[str]:
    """Every sentence of the grammar that expresses the intent, in a fixed order."""
    rooms, plain, roomed = _PHRASES[(action, obj)]
    words = _OBJECT_WORDS.get(obj, (obj.lower(),))
    dets = _DETERMINERS.get(obj, ("the",))
    if location == "none":
        templates, places = plain, ("",)
    else:
        if location not in rooms:
            raise ValueError(f"intent {(action, obj)} names no room")
        templates, places = tuple(t + " in the {l}" for t in plain) + roomed, _ROOM_WORDS[location]
    out: dict[str, None] = {}
    for t in templates:
        for w in words:
            for d in dets:
                for place in places:
                    out[t.format(o=w, l=place, d=d)] = None
    return list(out)

