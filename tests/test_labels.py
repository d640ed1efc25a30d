"""Labels files as researchers write them."""

from __future__ import annotations

import pytest

from imgserve.importing.labels import in_output_order, read_labels


def test_blank_lines_and_surrounding_whitespace_are_ignored(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\n  pink primrose \n\nhard-leaved pocket orchid\t\r\n\n")
    assert read_labels(f) == ["pink primrose", "hard-leaved pocket orchid"]


def test_a_byte_order_mark_is_not_part_of_the_first_label(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_bytes("\ufeffcat\ndog\n".encode())
    assert read_labels(f) == ["cat", "dog"]


def test_a_file_in_utf_16_is_read_and_one_in_latin_1_is_told_to_be_saved_as_utf_8(tmp_path):
    """Windows PowerShell's `>` writes UTF-16 with a byte order mark, Notepad of old Windows-1252: the first
    was refused, the second with Python's codec error and no way forward."""
    f = tmp_path / "labels.txt"
    f.write_bytes("Skogsmård\r\nrådjur\r\n".encode("utf-16"))
    assert read_labels(f) == ["Skogsmård", "rådjur"]
    f.write_bytes("daisy\nSkogsmård\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"is not UTF-8 text \(byte 0xe5 on line 2, .*\): save it as UTF-8"):
        read_labels(f)


def test_an_empty_file_is_refused(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("\n \n")
    with pytest.raises(ValueError, match="has no labels"):
        read_labels(f)


def test_lines_that_all_start_with_their_output_index_lose_it(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("0,daisy\n1 dandelion\n2: rose\n")
    assert read_labels(f) == ["daisy", "dandelion", "rose"]
    f.write_text("1 daisy\n2 rose\n")  # not output indices: kept as written
    assert read_labels(f) == ["1 daisy", "2 rose"]


def test_lines_with_their_output_index_last_or_out_of_order_are_put_in_its_order(tmp_path):
    """class_to_idx written as a CSV (`f"{name},{index}"`), or any indexed lines not sorted by index, were
    kept as written: labels 'daisy,0', or '2,rose' answering for output 0."""
    f = tmp_path / "classes.csv"
    f.write_text("class,idx\nrose,2\ndaisy,0\ndandelion,1\n")
    assert read_labels(f) == ["daisy", "dandelion", "rose"]
    f.write_text("2\trose\n0\tdaisy\n1\tdandelion\n")
    assert read_labels(f) == ["daisy", "dandelion", "rose"]
    f.write_text("class 0\nclass 1\n")  # a space before a trailing number: part of the name
    assert read_labels(f) == ["class 0", "class 1"]
    f.write_text('"daisy",0\n"dandelion",2\n')  # 0 and 2: no output indices, kept as written
    assert read_labels(f) == ['"daisy",0', '"dandelion",2']


def test_a_csvs_quotes_around_a_label_are_not_part_of_it(tmp_path):
    """pandas' Series(class_names).to_csv(): a header, the index, and quotes around names with a comma."""
    f = tmp_path / "labels.csv"
    f.write_text(',0\n0,"tench, Tinca tinca"\n1,goldfish\n2,"the ""great"" white shark"\n')
    assert read_labels(f) == ["tench, Tinca tinca", "goldfish", 'the "great" white shark']


def test_json_labels_a_list_or_an_object_put_in_output_order(tmp_path):
    f = tmp_path / "cat_to_name.json"
    f.write_text('["daisy", "rose"]')
    assert read_labels(f) == ["daisy", "rose"]
    f.write_text('{"1": "pink primrose", "10": "globe thistle", "2": "hard-leaved pocket orchid"}')
    by_folder = read_labels(f)
    assert isinstance(by_folder, dict)
    # ImageFolder sorts folder names as text: "1", "10", "2" are outputs 0, 1, 2
    order = ["1", "10", "2"]
    assert in_output_order(f, by_folder, order, "x") == ["pink primrose", "globe thistle", "hard-leaved pocket orchid"]
    with pytest.raises(ValueError, match="saves no class_to_idx to put them in output order"):
        in_output_order(f, by_folder, None, "")
    f.write_text('{"1": "rose", "0": "daisy"}')
    assert in_output_order(f, read_labels(f), None, "") == ["daisy", "rose"]  # keys are output indices


def test_imagenet_class_index_json_gives_the_names_by_output_index(tmp_path):
    """Keras's and the PyTorch tutorials' imagenet_class_index.json, {"0": ["n01440764", "tench"], ...}, was
    refused as 'neither a list of labels nor an object of labels'."""
    f = tmp_path / "imagenet_class_index.json"
    f.write_text('{"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"]}')
    assert in_output_order(f, read_labels(f), None, "") == ["tench", "goldfish"]


def test_a_csv_with_a_header_row_above_indexed_lines_loses_both(tmp_path):
    f = tmp_path / "classes.csv"
    f.write_text("id,name\r\n0,daisy\r\n1,dandelion\r\n2,rose\r\n")
    assert read_labels(f) == ["daisy", "dandelion", "rose"]
    f.write_text("id,name\n1,daisy\n2,rose\n")  # not output indices: kept as written, header and all
    assert read_labels(f) == ["id,name", "1,daisy", "2,rose"]


def test_class_names_as_python_prints_them_are_read_not_run(tmp_path):
    """print(dataset.classes) or print(dataset.class_to_idx) pasted into a file: single quotes, not JSON, and
    refused as 'starts like JSON but is not JSON'."""
    f = tmp_path / "classes.txt"
    f.write_text("['daisy', 'dandelion', \"rose's\"]\n")
    assert read_labels(f) == ["daisy", "dandelion", "rose's"]
    f.write_text("{'rose': 2, 'daisy': 0, 'dandelion': 1}")
    assert read_labels(f) == ["daisy", "dandelion", "rose"]
    f.write_text("[__import__('os').getcwd()]")  # code is no literal: refused, never run
    with pytest.raises(ValueError, match="starts like JSON but is not JSON"):
        read_labels(f)


def test_imagefolders_class_to_idx_saved_as_json_gives_the_names_in_index_order(tmp_path):
    f = tmp_path / "class_to_idx.json"
    f.write_text('{"rose": 2, "daisy": 0, "dandelion": 1}')
    assert read_labels(f) == ["daisy", "dandelion", "rose"]
    f.write_text('{"rose": 3, "daisy": 0}')  # not every output has a name
    with pytest.raises(ValueError, match="is JSON but neither a list of labels nor an object of labels"):
        read_labels(f)
