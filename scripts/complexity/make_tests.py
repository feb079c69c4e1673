"""Sample request bodies for fixtures.jsonl (the Rust port must reproduce the features
to ~1e-12 and the scores to ~1e-12; all arithmetic is f64)."""

LONG = ("The committee reviewed the proposal in detail. It wasn't clear whether the budget, "
        "which had been cut by 12% in 2021, could support 3 new hires; if not, the plan "
        "would have to be delayed. ") * 40   # ~8 KB

CASES = [
    ("greeting", {"model": "auto", "messages": [{"role": "user", "content": "hi there!"}]}),
    ("greeting_thanks", {"messages": [{"role": "user", "content": "Hello! Thanks for your help yesterday :)"}]}),
    ("gsm8k_word_problem", {"messages": [{"role": "user", "content":
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether in April and May?"}]}),
    ("gsm8k_longer", {"messages": [{"role": "user", "content":
        "A store sells pencils at $0.25 each and notebooks at $3 each. Maria buys 12 pencils and "
        "some notebooks. She pays with a $50 bill and gets $29 back. If the store gives a 10% "
        "discount on notebooks, how many notebooks did she buy? Solve it step by step."}]}),
    ("latex_proof", {"messages": [{"role": "user", "content":
        "Prove that $\\sum_{k=1}^{n} k^2 = \\frac{n(n+1)(2n+1)}{6}$ for all integers $n \\geq 1$, "
        "and derive a closed form for $\\sum_{k=1}^{n} k^3$."}]}),
    ("code_debug", {"messages": [{"role": "user", "content":
        "Why does this Python function return None? Fix the bug.\n```python\ndef find_max(xs):\n"
        "    best = xs[0]\n    for x in xs[1:]:\n        if x > best: best = x\n```"}]}),
    ("code_rust", {"messages": [
        {"role": "system", "content": "You are a senior Rust engineer."},
        {"role": "user", "content": "Implement a lock-free SPSC ring buffer in Rust with `push` "
         "and `pop`; explain why the memory orderings you choose are sufficient.\n"
         "struct Ring<T> { buf: Vec<T>, head: AtomicUsize, tail: AtomicUsize };"}]}),
    ("translate", {"messages": [{"role": "user", "content": "Translate to French: I'd like a coffee, please."}]}),
    ("summarize_long", {"messages": [{"role": "user", "content": "Summarize the following in one sentence:\n\n" + LONG}]}),
    ("multi_turn_chat", {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Compose an engaging travel blog post about a recent trip to Hawaii."},
        {"role": "assistant", "content": "Aloha! Last month I finally made it to the islands... (a 300-word post)"},
        {"role": "user", "content": "Rewrite your previous response. Start every sentence with the letter A."}]}),
    ("multi_turn_reasoning", {"messages": [
        {"role": "user", "content": "David has three sisters. Each of them has one brother. How many brothers does David have?"},
        {"role": "assistant", "content": "David has no brothers; he is the one brother of his sisters."},
        {"role": "user", "content": "If we change the previous question and assume that each sister of David has two brothers, how many brothers would David have?"}]}),
    ("tools_call", {"messages": [
        {"role": "user", "content": "What's the weather in Paris tomorrow, and should I take an umbrella?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"day\":\"tomorrow\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"rain_probability\": 0.7, \"temp_c\": 14}"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
                  {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]}),
    ("json_schema_extraction", {"messages": [{"role": "user", "content":
        "Extract the name, author and year of each book: 'Harry Potter and the Philosopher's Stone' "
        "by J.K. Rowling (1997); 'The Hobbit' by J.R.R. Tolkien (1937)."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "books", "schema": {"type": "object"}}},
        "max_tokens": 512}),
    ("max_tokens_small_classify", {"messages": [{"role": "user", "content":
        "Is this review positive or negative? \"Not bad at all, I'd buy it again.\""}], "max_tokens": 5}),
    ("max_completion_tokens_large", {"messages": [{"role": "user", "content":
        "Write a detailed design document for a distributed rate limiter."}], "max_completion_tokens": 32768}),
    ("content_parts_with_image", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is shown in this chart?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/chart.png"}},
        {"type": "text", "text": "Calculate the average growth rate."}]}]}),
    ("unicode_text", {"messages": [{"role": "user", "content":
        "Explique pourquoi l’équation x² − 4 = 0 a deux solutions… ∀x ∈ ℝ?"}]}),
    ("mmlu_style_law", {"messages": [{"role": "user", "content":
        "A man who owned a house conveyed it to his daughter, but he didn't record the deed. If the "
        "daughter later sold it, which party holds title?\nA. The man\nB. The daughter\nC. The buyer\n"
        "D. Neither\nAnswer:"}]}),
    ("edge_bigrams_contractions", {"messages": [{"role": "user", "content":
        "Show that at least one root isn't real, and at most two are; explain. Why? How much is "
        "step 1 worth... Internationalisation doesn't matter; 3.14*x^2 = y_1 {ok}; \\alpha."}]}),
    ("empty_messages", {"messages": []}),
    ("empty_user", {"messages": [{"role": "user", "content": ""}]}),
    ("long_8kb", {"messages": [{"role": "user", "content": LONG}]}),
]
