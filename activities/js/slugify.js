// slugify (component-v1, JavaScript): {"title": str, "max_length"?: int} -> {"slug": str}
// (The engine, StarlingMonkey, has no ICU: String.prototype.normalize is missing, so
// common accented letters are folded by a small table.)
const FOLD = { "à": "a", "á": "a", "â": "a", "ä": "a", "ç": "c", "è": "e", "é": "e",
               "ê": "e", "ë": "e", "î": "i", "ï": "i", "ô": "o", "ö": "o", "ù": "u",
               "û": "u", "ü": "u", "ñ": "n", "ß": "ss" };

export function run({ title, max_length = 60 }) {
  const slug = title
    .toLowerCase()
    .replace(/[^\x00-\x7f]/g, (c) => FOLD[c] ?? "-")
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, max_length)
    .replace(/-+$/g, "");
  return { slug };
}
